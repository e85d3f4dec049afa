-- top_posts: per brand, the most engaging, the most positive and the most negative posts of a period.
-- Answers: "which posts should I read to understand brand X's week?"
-- engagement = likes + shares + replies (a missing count counts as 0).
-- Parameters (NULL = no filter): $brand, $date_from, $date_to (inclusive days, UTC),
--   $model_version (NULL = the most recently used model), $limit posts per brand and ranking (default 5).
-- ranking: 'engagement' (most engagement first), 'most_positive' / 'most_negative' (by
--   brand_sentiment_score; ties broken by engagement, then post_id).
-- brand_label and brand_sentiment_score (p_positive - p_negative) are toward the brand: a post that praises one
-- brand and pans another is most positive for the one and most negative for the other; a post without a brand
-- has its own.
WITH posts AS NOT MATERIALIZED (  -- read twice from the table rather than copied
    SELECT *, coalesce(likes, 0) + coalesce(shares, 0) + coalesce(replies, 0) AS engagement,
           brand_p_positive - brand_p_negative AS brand_sentiment_score
    FROM post_sentiment
    WHERE model_version = coalesce($model_version, (SELECT model_version FROM latest_model_version))
      AND ($brand IS NULL OR brand = $brand)
      AND ($date_from IS NULL OR day >= CAST($date_from AS DATE))
      AND ($date_to IS NULL OR day <= CAST($date_to AS DATE))
),
cutoffs AS (  -- per brand, the n-th best value of each ranking: only posts past one of them can place
    SELECT
        brand,
        list_last(max(engagement, coalesce(CAST($limit AS INTEGER), 5)))      AS min_engagement,
        list_last(max(brand_sentiment_score, coalesce(CAST($limit AS INTEGER), 5))) AS min_positive_score,
        list_last(min(brand_sentiment_score, coalesce(CAST($limit AS INTEGER), 5))) AS max_negative_score
    FROM posts
    GROUP BY brand
),
ranked AS (
    SELECT
        p.*,
        row_number() OVER (PARTITION BY p.brand ORDER BY engagement DESC, post_id)                      AS by_engagement,
        row_number() OVER (PARTITION BY p.brand ORDER BY brand_sentiment_score DESC, engagement DESC, post_id) AS by_positive,
        row_number() OVER (PARTITION BY p.brand ORDER BY brand_sentiment_score ASC, engagement DESC, post_id)  AS by_negative
    FROM posts p JOIN cutoffs c ON p.brand IS NOT DISTINCT FROM c.brand
    WHERE p.engagement >= c.min_engagement
       OR p.brand_sentiment_score >= c.min_positive_score
       OR p.brand_sentiment_score <= c.max_negative_score
),
rankings AS (
    SELECT 'engagement' AS ranking, by_engagement AS rank, * FROM ranked
    UNION ALL BY NAME
    SELECT 'most_positive' AS ranking, by_positive AS rank, * FROM ranked
    UNION ALL BY NAME
    SELECT 'most_negative' AS ranking, by_negative AS rank, * FROM ranked
)
SELECT brand, ranking, rank, post_id, day, brand_label, brand_sentiment_score, engagement, likes, shares, replies, source, text
FROM rankings
WHERE rank <= coalesce(CAST($limit AS INTEGER), 5)
  AND (ranking = 'engagement' OR brand_sentiment_score IS NOT NULL)  -- an unscored post is neither most positive nor negative
ORDER BY brand, ranking, rank;
