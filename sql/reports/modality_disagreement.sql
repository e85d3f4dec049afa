-- modality_disagreement: per brand, how often the text and the image of a post point different ways.
-- Answers: "how much sarcasm or irony ('great... [photo of a disaster]') is there around brand X?"
-- Counted over posts with both a text and an image label. disagreeing = labels differ at all;
-- opposite = one positive and the other negative.
-- Parameters (NULL = no filter): $brand, $date_from, $date_to (inclusive days, UTC),
--   $model_version (NULL = the most recently used model version), $source, $lang (a platform, a language).
WITH posts AS (
    SELECT *
    FROM post_sentiment
    WHERE model_version = coalesce($model_version, (SELECT model_version FROM latest_model_version))
      AND ($brand IS NULL OR brand = $brand)
      AND ($source IS NULL OR source = $source)
      AND ($lang IS NULL OR lang = $lang)
      AND ($date_from IS NULL OR day >= CAST($date_from AS DATE))
      AND ($date_to IS NULL OR day <= CAST($date_to AS DATE))
),
counts AS (
    SELECT
        brand,
        count(*)                                                                 AS posts,
        count(*) FILTER (text_label IS NOT NULL AND image_label IS NOT NULL)    AS posts_with_both,
        count(*) FILTER (text_label <> image_label)                              AS disagreeing,
        count(*) FILTER (text_label = 'positive' AND image_label = 'negative')   AS positive_text_negative_image,
        count(*) FILTER (text_label = 'negative' AND image_label = 'positive')   AS negative_text_positive_image
    FROM posts
    GROUP BY brand
)
SELECT
    *,
    disagreeing / nullif(posts_with_both, 0)                                                      AS disagreement_rate,
    (positive_text_negative_image + negative_text_positive_image) / nullif(posts_with_both, 0)    AS opposite_rate
FROM counts
ORDER BY brand;
