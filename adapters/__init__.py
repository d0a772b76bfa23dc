"""The stateful PyTorch side of functional_optim (torch.optim.Optimizer adapters)."""
