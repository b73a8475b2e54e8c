from hfsnet.interop.share import share
