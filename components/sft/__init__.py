"""The sft stage as a KFP component."""
