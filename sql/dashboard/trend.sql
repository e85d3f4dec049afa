-- trend: per brand and day or ISO week, the volume and the sentiment counts behind net sentiment.
-- Answers: "how did brand X's volume and net sentiment move, and on which days?" (the dashboard's overview)
-- net_sentiment = (positive - negative) / (positive + negative), NULL with neither; the dashboard
-- adds its 95% Wilson interval from these counts.
-- Parameters (NULL = no filter): $brand, $date_from, $date_to (inclusive days, UTC; a week cut by
--   them counts only its days inside), $source, $lang, $model_version (required: the version the
--   dashboard resolved), $period ('week' = ISO weeks starting Monday; anything else = days).
-- Dates are compared with created_at, not the view's day, so DuckDB skips the row groups of other days.
SELECT
    brand,
    CASE WHEN $period = 'week' THEN CAST(date_trunc('week', day) AS DATE) ELSE day END  AS period_start,
    count(*)                                                  AS posts,
    count(*) FILTER (label = 'positive')                      AS positive,
    count(*) FILTER (label = 'neutral')                       AS neutral,
    count(*) FILTER (label = 'negative')                      AS negative,
    (count(*) FILTER (label = 'positive') - count(*) FILTER (label = 'negative'))
        / nullif(count(*) FILTER (label IN ('positive', 'negative')), 0)                  AS net_sentiment,
    avg(sentiment_score)                                      AS mean_sentiment_score
FROM post_sentiment
WHERE model_version = $model_version
  AND ($brand IS NULL OR brand = $brand)
  AND ($source IS NULL OR source = $source)
  AND ($lang IS NULL OR lang = $lang)
  AND ($date_from IS NULL OR created_at >= CAST($date_from AS DATE))
  AND ($date_to IS NULL OR created_at < CAST($date_to AS DATE) + 1)
GROUP BY ALL
ORDER BY brand, period_start;
