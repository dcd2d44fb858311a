"""Test-wide settings.

The test models are tiny: one PyTorch thread is as fast as several and, unlike several, does not
stall when another process holds a core (a loaded CI machine made the suite 10x slower).
"""
import torch

torch.set_num_threads(1)
