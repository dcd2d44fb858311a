"""ticketlab: lottery tickets and sparse training on PyTorch."""
