"""GPU checks: every family with the GPU recipe, FSDP2 against DDP, memory per rank."""
