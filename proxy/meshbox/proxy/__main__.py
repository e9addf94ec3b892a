"""``python -m meshbox.proxy``: same as the meshbox-proxy command."""

from meshbox.proxy.entry import main

main()
