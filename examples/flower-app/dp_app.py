"""The example federation with Flower's differential privacy, audited by flaudit: central DP
(``DifferentialPrivacyServerSideFixedClipping`` with Flower's RDP accountant, which needs the
``dp-accounting`` package) and, on training only, ``LocalDpMod``. The recording holds the
settings and Flower's ``privacy_spent()`` after each round; ``flaudit run`` with
``audit-dp.toml`` reports them as findings (Flower's epsilon next to Opacus' accounting of the
same mechanism; LocalDpMod's per-round epsilon >= 1). Run with ``FLOWER_APP_FEDERATION=red-team``
(equal client sizes: Flower's accountant requires equal FedAvg weights).
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import LocalDpMod
from flwr.serverapp import (
    Grid, NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod, ServerApp,
)
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

import flower_app
from flaudit.integrations.flower.canary import CanaryMod
from flaudit.integrations.flower.strategy import RecordingStrategy
from flower_app import FEDERATION, RECORDING, federation

NOISE_MULTIPLIER, CLIPPING_NORM, DELTA = 1.0, 1.0, 1e-5
LOCAL_DP = dict(clipping_norm=1.0, sensitivity=1.0, epsilon=2.0, delta=DELTA)  # epsilon >= 1: flaudit flags it

client_app = ClientApp(mods=[CanaryMod(RECORDING, partition_id=0)])
client_app.train(mods=[LocalDpMod(**LOCAL_DP)])(flower_app.train)  # train only: evaluate stays free of DP mods
client_app.evaluate()(flower_app.evaluate)

server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    clients = FEDERATION["clients"]
    accountant = RdpAccountant(PrivacyConfig(target_delta=DELTA, population_size=clients,
                                             neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                                             sampling_method=SamplingMethod.NO_AMPLIFICATION))
    dp = DifferentialPrivacyServerSideFixedClipping(FedAvg(fraction_train=1.0, fraction_evaluate=0.0), NOISE_MULTIPLIER,
                                                    CLIPPING_NORM, clients, accountant=accountant)
    strategy = RecordingStrategy(dp, RECORDING, client_app=client_app)
    train_config = ConfigRecord({"lr": FEDERATION["lr"], "local-epochs": FEDERATION["local_epochs"],
                                 "batch-size": FEDERATION["batch_size"], "momentum": FEDERATION["momentum"]})
    strategy.start(grid, ArrayRecord(federation().new_model().state_dict()), num_rounds=FEDERATION["rounds"],
                   train_config=train_config)
