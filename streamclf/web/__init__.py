"""The live monitoring page: ``live.py`` keeps what it shows, ``app.py`` serves it, ``static/`` is the page."""
