"""The tests draw their plots off screen, whatever backend MPLBACKEND names."""

import matplotlib

matplotlib.use("Agg")
