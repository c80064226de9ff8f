from .finite_loss_hook import FiniteLossHook
from .reparameterize_hook import ReparameterizeHook

__all__ = ['FiniteLossHook', 'ReparameterizeHook']
