"""`mmsa dashboard`: a local web app over the analyst snapshot, for clicking from a trend to its posts.

Built on the standard library's ThreadingHTTPServer with pages and SVG charts rendered on the
server, and no JavaScript at all: nothing to vendor or fetch from a CDN, every click is a link or a
GET form (so every view has an address that can be bookmarked or shared), and the pages are sent
with a Content-Security-Policy that forbids scripts, so hostile post text stays inert even if an
escape were ever missed. The queries are SQL files: the report pack's (sql/reports) and the
dashboard's own (sql/dashboard), run through mmsa.report. The snapshot is opened read-only and
reopened when the pipeline publishes a new one. Thumbnails come only from the project's image
cache (`--cache`), re-encoded as small JPEGs; the analyst's browser never calls an image host.

Modules, from the query string to the socket: `filters` (what a view is asked for), `queries` (the snapshot, its
SQL, intervals, one Table per view), `svg` (the charts), `pages` (HTML and CSV), `server` (routes, thumbnails,
HTTP). This file imports nothing, so that a part loads alone.
"""
