"""dpfm.rtl"""
