-- share_of_voice_trend: per day or ISO week, each brand's mentions and their share of all brands' mentions then.
-- Answers: "who owns the conversation, and is that changing?" (the dashboard adds a 95% Wilson interval per share)
-- positive / negative mentions count the sentiment toward the brand (brand_label).
-- Parameters (NULL = no filter): $brand (its rows only; shares stay relative to ALL brands),
--   $date_from, $date_to (inclusive days, UTC), $source, $lang, $model_version (required: the
--   version the dashboard resolved), $period ('week' = ISO weeks starting Monday; else days).
WITH counts AS (
    SELECT
        brand,
        CASE WHEN $period = 'week' THEN CAST(date_trunc('week', day) AS DATE) ELSE day END  AS period_start,
        count(*)                                                  AS mentions,
        count(*) FILTER (brand_label = 'positive')                AS positive_mentions,
        count(*) FILTER (brand_label = 'negative')                AS negative_mentions
    FROM post_sentiment
    WHERE model_version = $model_version
      AND ($source IS NULL OR source = $source)
      AND ($lang IS NULL OR lang = $lang)
      AND ($date_from IS NULL OR created_at >= CAST($date_from AS DATE))
      AND ($date_to IS NULL OR created_at < CAST($date_to AS DATE) + 1)
    GROUP BY ALL
)
SELECT
    brand,
    period_start,
    mentions,
    CAST(sum(mentions) OVER (PARTITION BY period_start) AS BIGINT) AS all_mentions,
    mentions / sum(mentions) OVER (PARTITION BY period_start) AS share_of_voice,
    positive_mentions,
    negative_mentions
FROM counts
QUALIFY $brand IS NULL OR brand = $brand
ORDER BY period_start, mentions DESC, brand;
