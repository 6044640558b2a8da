"""ComfyUI glue: thin node classes over hspace_core, one module per node family (see registry.py)."""
