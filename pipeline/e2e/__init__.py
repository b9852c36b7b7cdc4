"""End-to-end fine-tuning with the Hugging Face Trainer on the same model code, and exports for stage one."""
