"""Small helpers every floor of the package may use: output locks (``lock``) and checks made
before a file is read (``files``). Nothing here imports the rest of the package but ``errors``."""
