"""Pure PyTorch: the model, growth operators, data and the training loop. No I/O frameworks here."""
