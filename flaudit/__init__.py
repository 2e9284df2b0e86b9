"""flaudit: privacy defense audits for federated learning (attacks x defenses -> scorecard).

The installed package maps the repository's top folders: ``flaudit.scenarios`` (the simulated
FL world), ``flaudit.defenses`` (what protects updates) and ``flaudit.auditor`` (attacks,
metrics, the audit runner, scorecard, reports, gate, CLI).
"""
