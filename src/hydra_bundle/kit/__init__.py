"""The agent kit: what a bundle carries so that a site needs nothing but ``sh``, ``tar``, ``openssl``,
``sha256sum`` and ``python3`` to run the agent (``install.sh``), and how the agent installs newer kits itself.

``installer.py`` uses the standard library only and imports nothing of this package: ``install.sh`` runs it with
the host's ``python3`` before hydra-bundle is installed. ``script.py`` builds ``install.sh`` from it."""
