"""The bottom floor every other part of cellseg-d2 imports: the dataset layout (folder, file and
class names, the one class palette), file helpers (atomic writes, bounded JSON, hashes, checks
made before a file is read), output locks, and the tools' shared command-line pieces. Nothing
here imports anything of the package above :mod:`cellseg_d2.errors`."""
