"""Empirical privacy audit of DP defenses: is the epsilon a defense reports real?

One client of the simulated federation (the canary client) trains with ``m`` gradient canaries
(Dirac canaries: a record whose gradient is ``canary_norm`` on one model coordinate), each in
its data with probability 1/2 (``canaries``). The server's observation (that client's uploads,
or the aggregate under secure aggregation) scores every canary, and the one-run audit of
Steinke, Nasr and Jagielski (2023) turns the membership guesses into an epsilon lower bound
at the configured confidence (``bound``). ``job`` runs it as an audit job; ``claims`` sets the
bound beside the accountant's epsilon and flags a claim the bound exceeds (``dp_violation``).
"""
