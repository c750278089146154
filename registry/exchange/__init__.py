"""Moving vectors between registries and tools: signed bundles (``bundle``) and
PEFT LoRA adapters in and out (``peft``)."""
