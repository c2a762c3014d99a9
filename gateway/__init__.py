"""The image gateway: pulls images from registries once per digest for a whole
cluster, converts them to squashfs and publishes them to each system's image
directory.  Request -> queue -> fetch -> merge -> squash -> publish.
"""
