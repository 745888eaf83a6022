"""Data shipped inside the package: trained networks and the images to check them on.

Nothing here imports torch; the torch side is :mod:`mobileone_cli.models.trained` (the networks)
and :mod:`mobileone_cli.data.digits` (the images).
"""
