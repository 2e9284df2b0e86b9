"""Example flaudit plugins (see docs/plugins.md): ``models.wide_mlp``, ``datasets.textures``,
``attacks.RowRatio``."""
