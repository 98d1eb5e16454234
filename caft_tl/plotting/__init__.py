"""Figures (plotly, saved as HTML and static images) and circuitsvis token displays."""
