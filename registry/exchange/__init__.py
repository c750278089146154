"""Moving vectors between registries and tools: signed bundle files (``bundle_format``;
export and import in ``bundle``) and PEFT LoRA adapters (``peft``; ``peft_export``,
``peft_import``), behind the ``Exchange`` service (``service``)."""
