from hfsnet.interop.share import share

__all__ = ["share"]
