"""Attacks, one module per family; ``registry.ATTACKS`` names them (``flaudit list``).

Their shared machinery (local-update simulation, label counts, imprint algebra, image priors,
generators, inversion nets, threat-model bases) lives in ``toolkit/``.
"""
