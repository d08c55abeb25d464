"""Runs Cog's own integration suite (testscript .txtar files) against cogkit.

The suite is data kept outside the repository, at ../shared/peer-suites/cog
relative to the repo root; txtar.py parses its files and script.py interprets
their commands with the semantics of Cog's Go harness (harness/*.go there)."""
