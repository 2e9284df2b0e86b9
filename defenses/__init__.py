"""What protects updates. Importing the package registers every defense family in DEFENSES."""

# Defense families (each import registers its defenses):
from flaudit.defenses import compression, dp, noise  # noqa: E402,F401
from flaudit.defenses import secagg  # noqa: E402,F401
