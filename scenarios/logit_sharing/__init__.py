"""Logit-sharing FL (the FedMD family): clients share logits on a public set, not updates.

``world`` builds the PLI paper's data protocol, ``base`` the round every protocol shares, and
``fedmd``, ``dsfl``, ``fedgems`` the protocols (registered as scenario kinds in
``scenarios.kinds``).
"""
