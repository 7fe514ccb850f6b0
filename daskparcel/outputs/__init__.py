"""What daskparcel writes for other tools: BIDS atlas derivatives, parcel time series and connectomes."""
