"""dpfm.boards"""
