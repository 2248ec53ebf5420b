"""net: the HTTP transport and the media fetcher, the I/O beneath the actors"""
