"""Query any image: the query engine, the command-line output and the local web page."""
