from .deploy import atomic_save, deploy_config
from .hooks import ReparameterizeHook
from .runner import Runner

__all__ = ['ReparameterizeHook', 'Runner', 'atomic_save', 'deploy_config']
