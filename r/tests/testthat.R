library(testthat)
library(kiln)

test_check("kiln")
