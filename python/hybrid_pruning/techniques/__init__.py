"""One module per reduction technique, each with one public entry."""
