from .deploy_checkpoints import atomic_save
from .deploy_files import deploy_config
from .hooks import FiniteLossHook, ReparameterizeHook
from .runner import Runner

__all__ = ['FiniteLossHook', 'ReparameterizeHook', 'Runner', 'atomic_save', 'deploy_config']
