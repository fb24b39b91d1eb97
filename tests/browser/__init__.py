"""Helpers for the browser tests: a JupyterLab server, Chromium through Playwright, and notebook pages."""
