-- filter_options: the values the dashboard's filters offer: each brand, source and language with its posts, and the days covered.
-- Answers: "what can I filter on in this snapshot?"
-- One scan for the three lists (grouping sets); field = 'brand', 'source' or 'lang'; value NULL = posts without one.
-- posts counts each post once (a post naming two brands is two rows of post_sentiment, one source and language).
-- Parameters: $model_version (required: the dashboard resolves the default version once per snapshot).
SELECT
    CASE grouping(brand, source, lang) WHEN 3 THEN 'brand' WHEN 5 THEN 'source' ELSE 'lang' END AS field,
    coalesce(brand, source, lang)                   AS value,
    count(DISTINCT post_id)                         AS posts,
    min(day)                                        AS first_day,
    max(day)                                        AS last_day
FROM post_sentiment
WHERE model_version = $model_version
GROUP BY GROUPING SETS ((brand), (source), (lang))
ORDER BY field, posts DESC, value;
