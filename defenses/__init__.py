"""What protects updates; ``registry.DEFENSES`` names every defense (``flaudit list``)."""
