"""Model code: loading weights (safetensors, GGUF), the Llama family forward pass, LoRA."""
