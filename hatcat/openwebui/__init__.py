"""HatCat inside stock OpenWebUI: a Filter and an Action function, their bundler and installer.

`python -m hatcat.openwebui install --url ... --email ... --password ...` installs both functions;
`python -m hatcat.openwebui source hatcat_divergence` prints one function for pasting by hand.
"""
