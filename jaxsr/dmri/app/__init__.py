"""The user's tool: `jaxsr upsample` on arrays and files, adaptation to a scan, the shipped
model, the BIDS App, the uncertainty map and the HTML report."""
