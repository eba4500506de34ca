"""One value in, one value out: fetch, patch, build (confined), initramfs, boot.
"""
