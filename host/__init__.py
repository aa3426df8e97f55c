"""dpfm.host"""
