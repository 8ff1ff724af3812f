"""A local AWS endpoint: moto in server mode on loopback, with Batch jobs run as local processes."""
from localaws.server import LocalAWS, NonLoopbackAddress, check_loopback

__all__ = ["LocalAWS", "NonLoopbackAddress", "check_loopback"]
