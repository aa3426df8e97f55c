"""dpfm.sim"""
