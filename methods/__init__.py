"""Built-in selection methods, one file each. Every module registers itself with ``@register_method``."""
